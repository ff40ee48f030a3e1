"""Drop-ins for the training stacks people use: each submodule imports its framework lazily.

- ``agentloss.integrations.lightning``: ``AgentLossCallback`` for PyTorch Lightning's ``Trainer``.
- ``agentloss.integrations.hf_trainer``: a ``TrainerCallback`` for the Hugging Face ``Trainer``.
- ``agentloss.integrations.basicsr``: BasicSR loss blocks to ``AgentWeightedLoss`` terms and weights.

Importing this package imports none of them (Lightning and transformers are optional).
"""
