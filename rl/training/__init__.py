"""The training group: the Trainer role (`trainer`), the driver's view of the data-parallel group (`group`),
objectives by name (`algos`), advantages on trees (`advantages`) and the losses (`losses`). Never imports
the engine: weights leave through `branchrl.sync`."""
