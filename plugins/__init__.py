"""atp.plugins: TensorRT plugins (TopKGate, MixedGemm) land here with the TensorRT issue."""
