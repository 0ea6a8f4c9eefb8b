"""Export of a (student) WALL-WM into the deployable bundle the robots run.

GR00T's deployment split (wallwm/export/graphs.py): the condition encoder once per
observation, one velocity step per tower looped on the host for any step count, the noise an
explicit input. One call does the whole export (`pipeline.export_bundle`):

    graphs.py      torch -> ONNX (torch.export-based exporter), dynamic batch and text length
    parity.py      ONNX FP32 vs PyTorch on the same inputs and noise
    bf16.py        BF16 weights and GEMM inputs, FP32 accumulation
    fp8.py         E4M3 weights per channel as FP8 initializers + DequantizeLinear; activation
                   Q/DQ with amax calibrated on build data
    precision.py   which FP8 activations to keep, per-dimension accuracy, onnx.reference check
    tensorrt.py    strongly typed TensorRT engines (GPU only, else skipped with the reason)
    bundle.py      graphs, normalization, tokenizer, health-check sample, manifest
                   (wallwm/release/FORMAT.md), checked by the release runner itself

No service client here: MLflow is components/tracking/export.py, the flow flows/distill_export.py.
"""
