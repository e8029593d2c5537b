"""Host-side tools: exporting the prompt collection and uploading it as a job's channel."""
