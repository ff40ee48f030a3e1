"""Image-restoration backbones: SwinIR and HAT through spandrel, PromptIR and MambaIRv2 re-implemented here."""
