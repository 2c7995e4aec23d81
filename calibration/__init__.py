"""atp.calibration: token-retention scorers and (later) quantization sensitivity."""
