"""The one place for sampling defaults: `SamplerSettings`, the `m2h generate` flags and the sampler node's widgets
all read these (paper Sec. IV-B: "the DDIM sampler with 50 steps and ... classifier-free guidance, applying a scale
factor of 7.5"). Plain constants, no imports: `nodes/spec.py` reads them without loading torch.

The model's own config wins over generic values: a context window of `CONTEXT_FRAMES_AUTO` (0) means the frame
count the checkpoint was trained with (`M2HConfig.num_frames`), and the working size is always the config's.
"""

STEPS = 50
GUIDANCE_SCALE = 7.5
SCHEDULER = "ddim"
SCHEDULERS = ("ddim", "euler", "dpmpp_2m", "unipc")
SEED = 0
CONTEXT_FRAMES_AUTO = 0  # = M2HConfig.num_frames, the clip length the model was trained on
CONTEXT_OVERLAP = 4
# Long videos: at most this many frames per UNet call. A chunk of consecutive context windows runs the spatial
# layers once per frame and the motion modules per window; memory is O(chunk), not O(video). A value <= the context
# window (0 included) = one window per call, the per-window path (every window a whole UNet pass).
CHUNK_FRAMES = 64
# CFG's conditional and unconditional passes as one UNet call (True: 2x the batch per call) or as two calls of the
# same frames (False: the same numbers; with chunks of 64 frames this holds what batched chunks of 32 held, with
# fewer chunk borders: faster, measured in benchmarks/bench_sampler.py)
BATCH_CFG = False
POSE_STRENGTH = 1.0  # scale of E_pose's residual on the UNet input (paper: 1)
IDENTITY_STRENGTH = 1.0  # scale of A's identity branch after its re-normalisation, Eq. 3 (paper: 1)
STRENGTH_MAX = 2.0
