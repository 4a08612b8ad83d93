"""CMDM denoiser: `build_model(cfg)`, the condition encoders, and checkpoint loading."""

from cmdm.model.checkpoint import CheckpointError, LoadReport, load_model_weights
from cmdm.model.cmdm import CMDM, build_model
from cmdm.model.condition import ContactEncoder
from cmdm.model.text import TextEncoder

__all__ = ["CMDM", "build_model", "ContactEncoder", "TextEncoder", "load_model_weights",
           "LoadReport", "CheckpointError"]
