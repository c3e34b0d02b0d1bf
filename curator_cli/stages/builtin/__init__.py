"""The stages that ship with curator (``perceptual``, ``torchvision``, ``clip``, ``linear-head``)."""
