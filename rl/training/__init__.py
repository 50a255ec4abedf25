"""The training group: the Trainer role (`trainer`), the driver's view of the group of trainers (`group`), their
torch.distributed side (`parallel`: FSDP2 sharding, mixed precision, sharded checkpoints), objectives by name
(`algos`) and what the trainer does for each (`objectives`), advantages on trees (`advantages`) and the losses
(`losses`). Never imports the engine: weights leave through `branchrl.sync`."""
