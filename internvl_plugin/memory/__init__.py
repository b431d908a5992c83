"""Will a config fit? Its training step at the real model size under fake tensors, measured per category."""
