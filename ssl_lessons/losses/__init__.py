"""One module per loss, as in dinov2/loss/."""
from .ntxent import nt_xent

__all__ = ["nt_xent"]
