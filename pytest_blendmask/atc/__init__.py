"""The atc family's library: ONNX export, ATC (command, run, log), AIPP, fusion switches, ONNX Runtime, .om runs.

Modules, imported one by one (nothing here imports torch or onnxruntime, so the plugin can
name this package without loading them): ``export`` (ONNX, cached), ``atc`` (the ``atc``
command line, runner and log parser), ``aipp`` (insert_op.cfg and its ONNX twin), ``fusion``
(fusion_switch.cfg and fusion_result.json), ``ort`` (ONNX Runtime sessions, fp16, int8),
``om`` (ais_bench runs of the compiled model).
"""
