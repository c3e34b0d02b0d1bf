"""Bytes to pixels: Pillow decode, the decoder protocol, the worker pool and its shared-memory
transport, and nvJPEG on the GPU."""
