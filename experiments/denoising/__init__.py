"""Paper experiment: image denoising with DnCNN and DnCNN + a cupytv TV layer (README.md)."""
