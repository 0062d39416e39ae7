"""torchdecoupled: decoupled learning (delayed gradients, local losses) for PyTorch."""
