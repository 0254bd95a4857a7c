"""kd_research: knowledge distillation with explicit tf.distribute training loops."""

__version__ = "0.1.0"
