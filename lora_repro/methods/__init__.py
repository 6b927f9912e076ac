"""Fine-tuning methods. Each is one module with a dataclass whose fields are its yaml's keys; the
trainer only calls the `Method` interface (check, apply, create_optimizer), never a method's name."""

from .base import Method

__all__ = ["Method"]
