"""Code both sides of AMS share: wire stubs (ams.v1), tensor serde, the sparse-update codec, video codec."""
