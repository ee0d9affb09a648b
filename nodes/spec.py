"""The pack's node table: ids, inputs (in widget order), outputs and tooltips, as plain data.

This table is the single source of truth: `nodes/comfy_nodes.py` builds each node's V3 `io.Schema` from it,
and the CI tests check every workflow JSON against it without ComfyUI installed.

Released workflows store widget values *by position* (UI format) — so never reorder or insert widget inputs
of a released node: append new ones at the end (or add a new node id).
Imports nothing heavy (no torch, no ComfyUI): the sampler defaults come from `m2h_core/inference/defaults.py`,
plain constants shared with `m2h generate`. Display names may change; node ids and widget order may not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from m2h_core.inference import defaults  # plain constants: the sampling defaults shared with `m2h generate`

CATEGORY = "M2HVideo"

# Custom socket types (ComfyUI io_type strings).
M2H_MODEL = "M2H_MODEL"
M2H_POSE = "M2H_POSE"
M2H_HEAD_COND = "M2H_HEAD_COND"
CUSTOM_TYPES = (M2H_MODEL, M2H_POSE, M2H_HEAD_COND)

# Socket-only (non-widget) types.
SOCKET_TYPES = {"IMAGE", "MASK", "LATENT", "VIDEO", "AUDIO", "VAE", "CLIP_VISION", *CUSTOM_TYPES}
WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"}

SCHEDULERS = defaults.SCHEDULERS
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
NONE = "none"
AUTO = "auto"


@dataclass(frozen=True)
class In:
    """One input. ``options_source`` names a dynamic file list (resolved by the node layer in ComfyUI)."""

    id: str
    type: str
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] | None = None
    options_source: str | None = None
    optional: bool = False
    multiline: bool = False
    control_after_generate: bool = False
    display_name: str | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES


@dataclass(frozen=True)
class Out:
    id: str
    type: str
    tooltip: str
    display_name: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: tuple[In, ...]
    outputs: tuple[Out, ...]
    needs: tuple[str, ...] = ()  # optional Python modules the node cannot run without
    output_node: bool = False
    extra: dict = field(default_factory=dict)

    def input(self, name: str) -> In:
        for i in self.inputs:
            if i.id == name:
                return i
        raise KeyError(f"{self.node_id} has no input {name!r}")

    @property
    def widgets(self) -> tuple[In, ...]:
        return tuple(i for i in self.inputs if i.is_widget)

    def ui_widget_values_len(self) -> int:
        """Length of a UI-format ``widgets_values`` list (seed-like widgets carry a control value after them)."""
        return sum(2 if w.control_after_generate else 1 for w in self.widgets)


_CLOTHING_HELP = ("Comma-separated clothing groups that make up the clothing mask. Clothing: upper, dress, coat, "
                  "pants, skirt, jumpsuit, scarf. Accessories you may add: hat, bag, belt, glove, socks, shoes, "
                  "sunglasses. Body parts (face, hair, arms, legs) are never clothing: a bare mannequin parses "
                  "as them.")

SEGMENTATION = NodeSpec(
    node_id="M2HMannequinSegmentation",
    display_name="M2H Mannequin Segmentation",
    description="Clothing mask M_c of every frame of a mannequin video (human parsing), or your own masks "
                "cleaned up the same way. The clothing mask decides what the generated person wears.",
    inputs=(
        In("frames", "IMAGE", "The mannequin video as an image batch (LoadVideo -> Get Video Components)."),
        In("model", "COMBO", "Human-parsing model from ComfyUI/models/human_parsing/: a segformer_b2_clothes "
           "folder (transformers), parsing_atr.onnx or parsing_lip.onnx. 'auto' picks the first one found. "
           "Ignored when masks are connected.", default=AUTO, options_source="human_parsing"),
        In("clothing_classes", "STRING", _CLOTHING_HELP, default="upper, dress, coat, pants, skirt, jumpsuit, scarf"),
        In("grow", "INT", "Grow (+) or shrink (-) the clothing mask by this many pixels (at the frames' size).",
           default=0, min=-64, max=64, step=1),
        In("feather", "INT", "Soften the mask edge over this many pixels (0 = hard mask).", default=0, min=0,
           max=64, step=1),
        In("fill_holes", "BOOLEAN", "Fill holes enclosed by the clothing (buttons, prints parsed as other "
           "labels).", default=True),
        In("temporal_window", "INT", "Majority vote over this many neighbouring frames to remove one-frame "
           "flicker (1 = off).", default=3, min=1, max=15, step=2),
        In("masks", "MASK", "Optional: your own clothing masks (one per frame, white = clothing). When connected "
           "no parsing model is loaded; grow/feather/fill still apply.", optional=True),
    ),
    outputs=(
        Out("clothing_mask", "MASK", "M_c: 1 on the clothing, 0 elsewhere (soft edges when feathered)."),
        Out("clothing_image", "IMAGE", "The frames multiplied by the clothing mask (what the model sees)."),
        Out("person_mask", "MASK", "Everything the parser did not call background (with your own masks: the "
            "clothing mask)."),
    ),
)

DWPOSE = NodeSpec(
    node_id="M2HDWPose",
    display_name="M2H DWPose",
    description="Body pose of every frame (DWPose, ONNX) rendered OpenPose-style, plus the keypoints.",
    inputs=(
        In("frames", "IMAGE", "The mannequin video as an image batch."),
        In("detector", "COMBO", "Person detector from ComfyUI/models/dwpose/ (yolox_l.onnx).",
           default="yolox_l.onnx", options_source="dwpose_det"),
        In("pose_model", "COMBO", "Whole-body pose model from ComfyUI/models/dwpose/ (dw-ll_ucoco_384.onnx).",
           default="dw-ll_ucoco_384.onnx", options_source="dwpose_pose"),
        In("hands", "BOOLEAN", "Draw hands. Off by default: mannequin hands are unreliable and the model was "
           "trained on body poses.", default=False),
        In("face", "BOOLEAN", "Draw face points (off by default: mannequins have no real face).", default=False),
        In("feet", "BOOLEAN", "Draw the feet (toes and heels) too.", default=False),
        In("smoothing", "COMBO", "Temporal smoothing of keypoints: one_euro removes jitter; none keeps raw "
           "detections.", default="one_euro", options=("one_euro", "none")),
        In("fill_missing", "COMBO", "Frames where no person was found: interpolate between neighbours, hold the "
           "last pose, or leave black.", default="interpolate", options=("interpolate", "hold", "none")),
        In("fps", "FLOAT", "Frame rate of the video (for smoothing); connect Get Video Components' fps.",
           default=30.0, min=1.0, max=240.0, step=0.01),
    ),
    outputs=(
        Out("pose_images", "IMAGE", "OpenPose-style pose images at the frames' size, one per frame."),
        Out("keypoints", M2H_POSE, "The keypoints (OpenPose-18 body, feet, hands, face) per frame."),
    ),
    needs=("onnxruntime",),
)

IDENTITY_PHOTO = NodeSpec(
    node_id="M2HHeadEncoder",  # id kept from the first release (saved workflows store it)
    display_name="M2H Identity Photo",
    description="Prepares the identity photo: finds the face (insightface), computes its ArcFace embedding, and "
                "places the photo at the model's size with the face on the mannequin's head (x_id) plus the "
                "face-landmark image p_id. The head encoder H itself runs inside the model, in M2H Sampler.",
    inputs=(
        In("identity", "IMAGE", "1-8 clear photos of the same person as an image batch (face at least ~100 px "
           "wide). Several photos: ArcFace embeddings averaged (outliers dropped, different people refused), the "
           "placed face taken from the most frontal, sharpest one."),
        In("model", M2H_MODEL, "The M2H model (from M2H Model Loader): gives the working size."),
        In("face_model", "COMBO", "insightface pack in ComfyUI/models/insightface/models/ (antelopev2 or "
           "buffalo_l; searched recursively).", default="antelopev2", options_source="insightface"),
        In("placement", "COMBO", "head_from_pose: scale and move the face to the mannequin's head position in the "
           "reference frame (use for head shots). fit_photo: centre-crop the whole photo to the model's aspect "
           "(use for full-body photos framed like the video).", default="head_from_pose",
           options=("head_from_pose", "fit_photo")),
        In("reference_frame", "INT", "Which frame's pose places the head (head_from_pose).", default=0, min=0,
           max=100000, step=1),
        In("face_scale", "FLOAT", "Face width relative to the head size estimated from the pose.", default=1.0,
           min=0.25, max=4.0, step=0.05),
        In("pose", M2H_POSE, "Keypoints from M2H DWPose (needed for head_from_pose).", optional=True),
    ),
    outputs=(
        Out("head_cond", M2H_HEAD_COND, "Identity conditioning for M2H Sampler."),
        Out("preview", "IMAGE", "The placed identity image with the detected box and landmarks drawn; what the "
                                "model does not see (outside the head, for head-only models) is dimmed. With several "
                                "photos, then every face with its similarity to the mean (dropped ones dimmed)."),
    ),
    needs=("insightface", "onnxruntime"),
)

MODEL_LOADER = NodeSpec(
    node_id="M2HUNetLoader",  # id kept from the first release (saved workflows store it)
    display_name="M2H Model Loader",
    description="Loads everything the sampler needs: the M2HVideo model (UNet with motion modules, pose and "
                "identity encoders, head encoder, adapter) and the frozen VAE and CLIP image encoder (connected "
                "VAE / CLIP_VISION inputs first, else the checkpoint's own when it embeds them, else the base model "
                "and clip_vision files). Checks that the files belong together before building anything. ComfyUI's "
                "memory manager owns the model (Unload Models / --lowvram / --highvram apply to it).",
    inputs=(
        In("m2h_checkpoint", "COMBO", "M2HVideo checkpoint from ComfyUI/models/m2hvideo/.",
           options_source="m2hvideo"),
        In("base_model", "COMBO", "SD-1.5 checkpoint (models/checkpoints) or diffusers folder (models/diffusers) "
           "giving the VAE; 'none' when the M2H checkpoint embeds its VAE and CLIP.", default=NONE,
           options_source="base"),
        In("clip_vision", "COMBO", "CLIP ViT-L/14 image encoder from models/clip_vision ('none' when embedded).",
           default=NONE, options_source="clip_vision"),
        In("motion_module", "COMBO", "AnimateDiff motion module from models/animatediff_models; only used when "
           "building from a base model (an M2H checkpoint already holds its motion modules).", default=NONE,
           options_source="animatediff_models"),
        In("precision", "COMBO", "Weights dtype: auto = fp16/bf16 on a GPU that supports it, fp32 on CPU.",
           default=AUTO, options=PRECISIONS),
        In("vae", "VAE", "Optional: a VAE from core Load Checkpoint / Load VAE (SD-1.5's for sd15 models). When "
           "connected it is used instead of the checkpoint's or base_model's VAE.", optional=True),
        In("clip_vision_model", "CLIP_VISION", "Optional: a CLIP vision model from core Load CLIP Vision (ViT-L/14 "
           "for sd15 models). When connected it is used instead of the checkpoint's or the clip_vision file's.",
           optional=True, display_name="clip_vision"),
    ),
    outputs=(Out("model", M2H_MODEL, "The loaded M2HVideo pipeline."),),
)

SAMPLER = NodeSpec(
    node_id="M2HSampler",
    display_name="M2H Sampler",
    description="Generates the human video: clothing frames + masks + body poses + identity -> frames.",
    inputs=(
        In("model", M2H_MODEL, "From M2H Model Loader."),
        In("frames", "IMAGE", "The mannequin video frames (the clothing source)."),
        In("clothing_mask", "MASK", "Clothing masks, one per frame (M2H Mannequin Segmentation)."),
        In("pose_images", "IMAGE", "Body-pose images, one per frame (M2H DWPose)."),
        In("head_cond", M2H_HEAD_COND, "Identity conditioning (M2H Identity Photo)."),
        In("seed", "INT", "Noise seed (the same seed gives the same video on the same device).", default=0,
           min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
        In("steps", "INT", f"Denoising steps (the paper uses {defaults.STEPS}).", default=defaults.STEPS, min=1,
           max=200, step=1),
        In("cfg", "FLOAT", "Classifier-free guidance scale (1 = off, faster).", default=defaults.GUIDANCE_SCALE,
           min=1.0, max=20.0, step=0.1),
        In("scheduler", "COMBO", "Sampling solver.", default=defaults.SCHEDULER, options=SCHEDULERS),
        In("context_frames", "INT", "Frames the model sees at once; longer videos are done in overlapping "
           "windows. 0 = the frame count the model was trained with. Lower it if you run out of GPU memory.",
           default=defaults.CONTEXT_FRAMES_AUTO, min=0, max=128, step=1),
        In("context_overlap", "INT", "Frames shared by neighbouring windows (blended).",
           default=defaults.CONTEXT_OVERLAP, min=0, max=64, step=1),
        In("resize", "COMBO", "crop_to_model: centre-crop and resize every input to the model's training size "
           "(logged). keep: use the frames' own size (must be a multiple of 8).", default="crop_to_model",
           options=("crop_to_model", "keep")),
        In("pose_strength", "FLOAT", "How strongly the body pose steers the video: scales the pose encoder's "
           "residual (1 = as trained, the paper's; 0 = pose ignored).", default=defaults.POSE_STRENGTH, min=0.0,
           max=defaults.STRENGTH_MAX, step=0.05),
        In("identity_strength", "FLOAT", "How strongly the identity photo shapes the face: scales the adapter's "
           "identity branch after its re-normalisation (1 = as trained, the paper's).",
           default=defaults.IDENTITY_STRENGTH, min=0.0, max=defaults.STRENGTH_MAX, step=0.05),
        In("garment_lock", "BOOLEAN", "Keep the video's own garment pixels (print, colour, logo) inside the clothing "
           "mask, eroded a few pixels, seam blended; never over the new person's arms or hair (needs a human-parsing "
           "model). Off = the paper's.", default=False),
        In("keep_background", "BOOLEAN", "Keep the video's own pixels outside the generated person (the shop's "
           "background); mannequin parts the person does not cover stay generated (needs a human-parsing model). "
           "Off = the paper's.", default=False),
        In("parsing_model", "COMBO", "Human-parsing model for garment_lock / keep_background (ComfyUI/models/"
           "human_parsing/); 'auto' picks the first one found. Not used when both are off.", default=AUTO,
           options_source="human_parsing"),
    ),
    outputs=(
        Out("images", "IMAGE", "The generated frames (connect to Create Video with the source fps); with "
            "garment_lock / keep_background, composited with the source video."),
        Out("latent", "LATENT", "The final latents in ComfyUI's convention (the VAE's raw latents, one per frame): "
            "core VAE Decode with the model's VAE gives the same frames as 'images' (before any garment_lock / "
            "keep_background compositing)."),
    ),
)

REGEN_MASK = NodeSpec(
    node_id="M2HRegenerateMask",
    display_name="M2H Regenerate Mask",
    description="What any generator (Wan2.2 Animate, VACE, AnimateDiff inpainting, M2H Zero-Shot) should redraw on a "
                "mannequin video: the bare mannequin body plus room for the new person's head and hair (sized from "
                "the pose), reaching a few pixels into the garment's edge, never the garment itself. Also the lock "
                "mask M2H Composite keeps the real garment on. Steady from frame to frame.",
    inputs=(
        In("frames", "IMAGE", "The mannequin video as an image batch."),
        In("parsing_model", "COMBO", "Human-parsing model (ComfyUI/models/human_parsing/) that finds the mannequin and "
           "its garment; 'auto' picks the first one found. Not used when both masks are connected.", default=AUTO,
           options_source="human_parsing"),
        In("clothing_classes", "STRING", _CLOTHING_HELP, default="upper, dress, coat, pants, skirt, jumpsuit, scarf"),
        In("head_scale", "FLOAT", "Width of the head region relative to the head width estimated from the pose "
           "(bigger for big hair or hats).", default=1.3, min=0.5, max=4.0, step=0.05),
        In("hair_margin", "FLOAT", "How far the head region reaches above the head, in head widths (room for "
           "hair).", default=0.35, min=0.0, max=2.0, step=0.05),
        In("grow_into_garment", "INT", "Pixels the region reaches into the garment where skin meets cloth, so the "
           "generator can draw that boundary (the lock mask stays clear of it).", default=4, min=0, max=64, step=1),
        In("feather", "INT", "Soft edge of the regenerate mask in pixels (0 = hard; the lock mask stays hard).",
           default=0, min=0, max=64, step=1),
        In("temporal_window", "INT", "Masks voted over this many neighbouring frames and the head position "
           "averaged, so the mask does not flicker (1 = off).", default=3, min=1, max=15, step=2),
        In("clothing_mask", "MASK", "Optional: your own clothing masks (white = garment) instead of the parser's.",
           optional=True),
        In("person_mask", "MASK", "Optional: the mannequin's silhouette (M2H Mannequin Segmentation's person_mask); "
           "with clothing_mask connected too no parsing model is loaded.", optional=True),
        In("keypoints", M2H_POSE, "Optional: M2H DWPose keypoints; they place and size the head region. Without "
           "them only the mannequin's own head is redrawn.", optional=True),
    ),
    outputs=(
        Out("regen_mask", "MASK", "1 where the generator should redraw (connect to its inpainting / replace mask)."),
        Out("lock_mask", "MASK", "1 on the garment M2H Composite puts back (connect to its lock_mask)."),
        Out("preview", "IMAGE", "The frames with the regenerate mask in red and the lock in green."),
    ),
)

COMPOSITE = NodeSpec(
    node_id="M2HComposite",
    display_name="M2H Composite",
    description="The garment lock and keep-background for frames from any generator: puts the mannequin video's "
                "real garment (and, if asked, its background) back into the generated frames, never over the new "
                "person's arms or hair (a human parser runs on the generated frames). The result has the generated "
                "frames' size; a source of another size is centre-cropped to their aspect ratio and resized (logged), "
                "and with different frame counts the first frames of both are used (logged).",
    inputs=(
        In("generated", "IMAGE", "The generated frames (any generator's IMAGE output)."),
        In("source", "IMAGE", "The mannequin video the frames were generated from (frame i with frame i)."),
        In("garment_lock", "BOOLEAN", "Keep the source's garment pixels (print, colour, logo) inside the lock mask "
           "(or the parser's garment, eroded), seam blended.", default=True),
        In("keep_background", "BOOLEAN", "Keep the source's pixels outside the generated person (the shop's "
           "background); mannequin parts the person does not cover stay generated.", default=False),
        In("seam", "COMBO", "How the seam is blended: poisson (measured best, benchmarks/bench_compositing.py), "
           "harmonise (local colour offset) or feather (alpha ramp only).", default="poisson",
           options=("poisson", "harmonise", "feather")),
        In("parsing_model", "COMBO", "Human-parsing model (ComfyUI/models/human_parsing/) run on the generated "
           "frames (and on the source when no lock_mask / mannequin_mask is connected); 'auto' picks the first "
           "one found.", default=AUTO, options_source="human_parsing"),
        In("lock_mask", "MASK", "Optional: M2H Regenerate Mask's lock_mask, taken as it is (else the parser's "
           "garment on the source, eroded a few pixels).", optional=True),
        In("mannequin_mask", "MASK", "Optional: the mannequin's silhouette (keep_background; else the parser on the "
           "source).", optional=True),
    ),
    outputs=(Out("images", "IMAGE", "The generated frames with the source's garment / background put back."),),
)

# -- zero-shot mode (public files, no M2H checkpoint; docs/zero-shot.md) ---------------------------------------------

SOCKET_TYPES.add("CONDITIONING")
MASK_MODES = ("latent_blend", "differential")

PUBLIC_LOADER = NodeSpec(
    node_id="M2HPublicLoader",
    display_name="M2H Public Weights Loader",
    description="Zero-shot mode, no M2H checkpoint: SD-1.5 + AnimateDiff + ControlNet OpenPose + IP-Adapter FaceID "
                "(-PlusV2 / Plus-Face) from the files ComfyUI users already have. Every file's header is checked "
                "before anything is built (one line naming the file, what it is and the fix). Plugs into M2H Identity "
                "Photo and M2H Zero-Shot Sampler (not M2H Sampler). ComfyUI's memory manager owns the model.",
    inputs=(
        In("base_model", "COMBO", "SD-1.5 checkpoint (models/checkpoints): UNet, VAE and the text encoder used for "
           "the default empty prompt.", options_source="base"),
        In("motion_module", "COMBO", "AnimateDiff motion module v2 (mm_sd_v15_v2) or v3 (v3_sd15_mm) from "
           "models/animatediff_models; 'none' = frame by frame (flickers).", default=NONE,
           options_source="animatediff_models"),
        In("controlnet_pose", "COMBO", "ControlNet 1.1 OpenPose (control_v11p_sd15_openpose) from models/controlnet; "
           "'none' = no pose guidance.", default=NONE, options_source="controlnet"),
        In("ip_adapter", "COMBO", "IP-Adapter from models/ipadapter: ip-adapter-faceid-plusv2_sd15.bin (best "
           "identity), ip-adapter-faceid_sd15.bin, or ip-adapter-plus-face_sd15 (Apache-2.0, weaker).",
           options_source="ipadapter"),
        In("ip_lora", "COMBO", "The FaceID LoRA: 'auto' = the one inside the IP-Adapter .bin; or "
           "ip-adapter-faceid-plusv2_sd15_lora.safetensors from models/loras; 'none' = no LoRA.", default=AUTO,
           options_source="loras"),
        In("clip_vision", "COMBO", "CLIP ViT-H/14 (CLIP-ViT-H-14-laion2B-s32B-b79K) from models/clip_vision, for "
           "FaceID-PlusV2 and Plus-Face; 'none' for plain FaceID.", default=NONE, options_source="clip_vision"),
        In("lora_strength", "FLOAT", "Strength of the FaceID LoRA merged into the UNet (IPAdapter_plus: 0.6).",
           default=0.6, min=-2.0, max=2.0, step=0.05),
        In("precision", "COMBO", "Weights dtype: auto = fp16/bf16 on a GPU that supports it, fp32 on CPU.",
           default=AUTO, options=PRECISIONS),
        In("vae", "VAE", "Optional: a VAE from core loaders, used instead of the base model's.", optional=True),
    ),
    outputs=(Out("model", M2H_MODEL, "The zero-shot model (for M2H Identity Photo and M2H Zero-Shot Sampler)."),),
)

ZERO_SHOT_SAMPLER = NodeSpec(
    node_id="M2HZeroShotSampler",
    display_name="M2H Zero-Shot Sampler",
    description="Redraws only the person (regen_mask) of the mannequin video with the public-weights model: pose "
                "from the DWPose images through ControlNet, identity from the photo's ArcFace through IP-Adapter. "
                "Outside the mask the source latents are kept at every step; garment lock and keep background "
                "finish the frames. Identity is weaker than a trained M2H model's.",
    inputs=(
        In("model", M2H_MODEL, "From M2H Public Weights Loader."),
        In("frames", "IMAGE", "The mannequin video frames."),
        In("regen_mask", "MASK", "What to redraw (white): the mannequin's body minus the garment plus the head "
           "(M2H Regenerate Mask, or any mask: one per frame, or one for all)."),
        In("clothing_mask", "MASK", "Clothing masks, one per frame (M2H Mannequin Segmentation): the garment lock."),
        In("pose_images", "IMAGE", "OpenPose images, one per frame (M2H DWPose): the ControlNet hint."),
        In("head_cond", M2H_HEAD_COND, "Identity (M2H Identity Photo with this model): its ArcFace embedding and "
           "face crop."),
        In("seed", "INT", "Noise seed.", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
        In("steps", "INT", "Denoising steps.", default=25, min=1, max=200, step=1),
        In("cfg", "FLOAT", "Classifier-free guidance scale (1 = off).", default=6.0, min=1.0, max=20.0, step=0.1),
        In("scheduler", "COMBO", "Sampling solver.", default=defaults.SCHEDULER, options=SCHEDULERS),
        In("context_frames", "INT", "Frames per AnimateDiff window (16 = as AnimateDiff was trained).", default=16,
           min=1, max=64, step=1),
        In("context_overlap", "INT", "Frames shared by neighbouring windows (blended).", default=4, min=0, max=32,
           step=1),
        In("resize", "COMBO", "crop_to_model: centre-crop and resize to the model's size (SD-1.5: 512x256). keep: "
           "the frames' own size (a multiple of 8).", default="crop_to_model", options=("crop_to_model", "keep")),
        In("pose_strength", "FLOAT", "ControlNet OpenPose strength (0 = pose ignored).", default=1.0, min=0.0,
           max=defaults.STRENGTH_MAX, step=0.05),
        In("identity_strength", "FLOAT", "IP-Adapter weight (FaceID scale).", default=0.8, min=0.0,
           max=defaults.STRENGTH_MAX, step=0.05),
        In("mask_mode", "COMBO", "latent_blend: source latents outside the mask at every step (soft edges blend). "
           "differential: a soft mask's weaker parts are redrawn only in the later steps.",
           default="latent_blend", options=MASK_MODES),
        In("garment_lock", "BOOLEAN", "Paste the video's own garment pixels back (eroded clothing mask, seam "
           "blended; needs a human-parsing model).", default=True),
        In("keep_background", "BOOLEAN", "Keep the video's own pixels outside the generated person (needs a "
           "human-parsing model).", default=True),
        In("parsing_model", "COMBO", "Human-parsing model for garment_lock / keep_background.", default=AUTO,
           options_source="human_parsing"),
        In("positive", "CONDITIONING", "Optional prompt (CLIP Text Encode with the base model's CLIP); default: "
           "the empty prompt.", optional=True),
        In("negative", "CONDITIONING", "Optional negative prompt; default: the empty prompt.", optional=True),
    ),
    outputs=(
        Out("images", "IMAGE", "The generated frames, composited with the source (garment lock / keep background)."),
        Out("latent", "LATENT", "The final latents (the VAE's raw latents, one per frame)."),
    ),
)

NODES: tuple[NodeSpec, ...] = (SEGMENTATION, DWPOSE, IDENTITY_PHOTO, MODEL_LOADER, SAMPLER, REGEN_MASK, COMPOSITE,
                               PUBLIC_LOADER, ZERO_SHOT_SAMPLER)
BY_ID = {n.node_id: n for n in NODES}
