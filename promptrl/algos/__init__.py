"""Prompt optimisers behind one interface: `Trainer(cfg, task, scorer, agent, out_dir).run()`."""
