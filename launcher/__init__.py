"""Host-side tools: the prompt export (export_prompts.py) and the image push and SageMaker jobs (submit.py)."""
