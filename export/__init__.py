"""atp.export: trace Hugging Face VLMs into ONNX bundles (needs torch and transformers)."""
