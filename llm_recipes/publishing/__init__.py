"""Publishing a model: the model card and the Hugging Face Hub upload."""
