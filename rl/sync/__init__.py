"""Weight sync, the one bridge between the training and inference groups: versioned, checksummed state dicts
(`weight_sync`) moved through the Ray object store or a torch.distributed broadcast group (`collective`)."""
