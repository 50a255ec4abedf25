"""What a run keeps: which verified leaves become samples (`prune`), the Parquet data set with provenance
(`datastore`), the compute ledger (`ledger`) and the run report (`report`)."""
