"""One module per method; each exposes `validate(config)` and
`train_and_evaluate(config, workdir) -> dict`."""
