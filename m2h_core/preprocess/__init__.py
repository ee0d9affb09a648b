"""Preprocessors: clothing parsing (M_c), DWPose body pose (p_m), face analysis (ArcFace, p_id, M_id).

Model files are found on disk by :mod:`.model_files` (nothing is downloaded). insightface, transformers and
onnxruntime are imported only when a model is loaded.
"""

from .dwpose import DWPoseDetector, PoseResult, render_poses
from .face import FaceAnalyzer, FaceResult, NoFaceError, align_face, face_similarity
from .masks import (apply_mask, feather_mask, fill_holes, grow_mask, load_mask_sequence, refine_mask,
                    temporal_smooth_masks)
from .model_files import MissingModelError, doctor, find_model_file, format_doctor
from .parsing import (ATR, LIP, SEGFORMER_CLOTHES, LabelSet, ParseResult, SCHPParser, SegformerClothesParser,
                      load_parser)
from .smoothing import SmoothedPoses, smooth_pose_sequence

__all__ = [
    "DWPoseDetector", "PoseResult", "render_poses",
    "FaceAnalyzer", "FaceResult", "NoFaceError", "align_face", "face_similarity",
    "apply_mask", "feather_mask", "fill_holes", "grow_mask", "load_mask_sequence", "refine_mask",
    "temporal_smooth_masks",
    "MissingModelError", "doctor", "find_model_file", "format_doctor",
    "ATR", "LIP", "SEGFORMER_CLOTHES", "LabelSet", "ParseResult", "SCHPParser", "SegformerClothesParser",
    "load_parser",
    "SmoothedPoses", "smooth_pose_sequence",
]
