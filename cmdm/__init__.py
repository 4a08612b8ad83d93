"""cmdm-tune: train and tune CMDM (afford-motion's text- and contact-conditioned motion diffusion) on Ray."""

__version__ = "0.1.0"
