"""Native alignment: rewrite pre-training documents with an aligned LLM under written guidelines."""
