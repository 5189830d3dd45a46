"""ATC, Ascend's offline compiler (ONNX -> .om): the command line, a runner with a timeout, the log parser.

Texts and options follow anchors.md section 4. On success ATC prints
``ATC run success, welcome to the next use.`` (then coded warnings such as ``W11001``); on
failure ``ATC run failed, Please check the detail log, ...`` followed by coded error blocks::

    E10001: [PID: 123] 2025-03-18-09:02:18.501.341 Value [-1] for parameter [image] is invalid. Reason: ...
            Possible Cause: ...
            Solution: ...
            TraceBack (most recent call last):
            ...

A failure is reported with those error blocks only (up to ``TraceBack``), never the whole log;
the full log is kept in ``atc.log`` next to the output.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .fusion import FUSION_RESULT_FILE, FusionPass, applied_passes, parse_fusion_result

FRAMEWORK_ONNX = 5
# --precision_mode values (anchors.md section 4), most accurate first for the first three.
PRECISION_MODES = (
    "must_keep_origin_dtype",
    "allow_fp32_to_fp16",
    "force_fp16",
    "allow_mix_precision",
    "allow_mix_precision_fp16",
    "allow_mix_precision_bf16",
    "force_fp32",
    "cube_fp16in_fp32out",
)
# The modes the atc family is parametrized over (issue 6).
GATED_PRECISION_MODES = ("allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype")
PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "mixed_hif8")
LOG_LEVELS = ("debug", "info", "warning", "error", "null")
DEFAULT_DYNAMIC_BATCH_SIZES = (1, 2, 4, 8)
DYNAMIC_PROFILE_COUNT = (2, 100)  # ATC accepts 2..100 --dynamic_batch_size profiles
DEFAULT_TIMEOUT_S = 1800.0
SUCCESS_BANNER = "ATC run success"
FAILURE_BANNER = "ATC run failed"
LOG_FILE = "atc.log"
INSTALL_HINT = "install the CANN toolkit and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`"

_SOC_RE = re.compile(r"Ascend\w+")
# E10001, EZ3003, EC0010 (errors); W11001 (warnings): a letter and five digits or capitals.
_CODE_RE = re.compile(r"^(?P<code>[EW][0-9A-Z]{5}):\s?(?P<text>.*)$")
# Newer CANN prefixes each coded message with the process id and a timestamp: noise for a report.
_PID_STAMP_RE = re.compile(r"^\[PID: \d+\]\s+\S+\s+")
_FALLBACK_ERROR_RE = re.compile(r"error|fail|cannot|not found", re.IGNORECASE)
_FALLBACK_LINES = 5


class AtcConfigError(ValueError):
    """ATC options that ATC would reject; the message names the option, the accepted values and the fix."""


class AtcError(RuntimeError):
    """ATC failed; the message holds ATC's error lines (not the whole log) and where the log is."""


class AtcTimeout(AtcError):
    """ATC ran past its timeout and was killed with its whole process group."""


@dataclass(frozen=True)
class AtcOptions:
    """The ATC options this plugin sets besides the model, output and input shape.

    ``dynamic_batch_sizes`` empty means a static batch-1 model; otherwise the input's batch
    dimension is written as -1 and one profile is compiled per size.
    """

    soc_version: str
    precision_mode: str | None = None
    precision_mode_v2: str | None = None
    fusion_switch_file: Path | None = None
    insert_op_conf: Path | None = None
    dynamic_batch_sizes: tuple[int, ...] = ()
    log_level: str = "error"


def validate_options(options: AtcOptions) -> None:
    """Raise AtcConfigError for option values or combinations ATC rejects, and for missing cfg files."""
    if not _SOC_RE.fullmatch(options.soc_version):
        raise AtcConfigError(
            f"--soc_version: expected Ascend + the chip name from `npu-smi info` (e.g. Ascend910B3, Ascend310P3); "
            f"got {options.soc_version!r}"
        )
    if options.precision_mode is not None and options.precision_mode_v2 is not None:
        raise AtcConfigError(
            f"--precision_mode ({options.precision_mode}) and --precision_mode_v2 ({options.precision_mode_v2}) "
            "cannot be combined; ATC accepts one of them: set only one"
        )
    for flag, value, accepted in (
        ("--precision_mode", options.precision_mode, PRECISION_MODES),
        ("--precision_mode_v2", options.precision_mode_v2, PRECISION_MODES_V2),
    ):
        if value is not None and value not in accepted:
            raise AtcConfigError(f"{flag}: expected one of {', '.join(accepted)}; got {value!r}")
    if options.log_level not in LOG_LEVELS:
        raise AtcConfigError(f"--log: expected one of {', '.join(LOG_LEVELS)}; got {options.log_level!r}")
    sizes = options.dynamic_batch_sizes
    if sizes:
        low, high = DYNAMIC_PROFILE_COUNT
        if not low <= len(sizes) <= high or len(set(sizes)) != len(sizes) or min(sizes) < 1:
            raise AtcConfigError(
                f"--dynamic_batch_size: expected {low} to {high} distinct positive batch sizes; got {','.join(map(str, sizes))}"
            )
    for flag, path in (("--fusion_switch_file", options.fusion_switch_file), ("--insert_op_conf", options.insert_op_conf)):
        if path is not None and not Path(path).is_file():
            raise AtcConfigError(f"{flag}: file {path} not found; generate it (models/ holds the templates) or drop the option")


def build_atc_command(
    onnx_path: Path,
    output: Path,
    input_hw: tuple[int, int],
    options: AtcOptions,
    input_name: str = "input",
    executable: str = "atc",
) -> list[str]:
    """The ``atc`` argv compiling ``onnx_path`` to ``<output>.om``.

    Args:
        onnx_path: the exported model (``--framework=5``, ONNX).
        output: the .om path without its suffix, as ATC's ``--output`` wants it.
        input_hw: (H, W) of the network input; the batch is 1, or -1 with dynamic batch sizes.
        options: validated here first (AtcConfigError).
        input_name: the ONNX graph input name.
        executable: the atc program.
    """
    validate_options(options)
    if not Path(onnx_path).is_file():
        raise AtcConfigError(f"--model: ONNX file {onnx_path} not found; export the model first (export_onnx)")
    batch = -1 if options.dynamic_batch_sizes else 1
    height, width = input_hw
    # Absolute paths: ATC runs in the output's directory, not the caller's.
    command = [
        executable,
        f"--model={Path(onnx_path).resolve()}",
        f"--framework={FRAMEWORK_ONNX}",
        f"--output={Path(output).resolve()}",
        f"--soc_version={options.soc_version}",
        f"--input_shape={input_name}:{batch},3,{height},{width}",
        "--input_format=NCHW",
        f"--log={options.log_level}",
    ]
    if options.precision_mode is not None:
        command.append(f"--precision_mode={options.precision_mode}")
    if options.precision_mode_v2 is not None:
        command.append(f"--precision_mode_v2={options.precision_mode_v2}")
    if options.dynamic_batch_sizes:
        command.append(f"--dynamic_batch_size={','.join(map(str, options.dynamic_batch_sizes))}")
    if options.fusion_switch_file is not None:
        command.append(f"--fusion_switch_file={Path(options.fusion_switch_file).resolve()}")
    if options.insert_op_conf is not None:
        command.append(f"--insert_op_conf={Path(options.insert_op_conf).resolve()}")
    return command


@dataclass(frozen=True)
class AtcMessage:
    """One coded ATC message: the code and its text with its Possible Cause/Solution lines."""

    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


@dataclass(frozen=True)
class AtcLog:
    """What the console output of one ATC run says."""

    success_banner: bool
    failure_banner: bool
    errors: tuple[AtcMessage, ...]
    warnings: tuple[AtcMessage, ...]
    failure_lines: tuple[str, ...]  # the lines to report on failure: coded errors, else the likely ones


def parse_atc_log(text: str) -> AtcLog:
    """Split ATC's console output into banners, coded errors (E*) and warnings (W*).

    A coded message continues over the following indented lines up to ``TraceBack``, which
    starts ATC's internal call stack (not useful to a user). When a failure has no coded
    error (a crash, a missing shared library), ``failure_lines`` falls back to lines that
    mention an error, else the last few lines.
    """
    messages: list[AtcMessage] = []
    current: list[str] | None = None
    code = ""
    in_traceback = False
    lines = text.splitlines()

    def flush() -> None:
        if current is not None:
            messages.append(AtcMessage(code, " ".join(current)))

    for line in lines:
        match = _CODE_RE.match(line)
        if match:
            flush()
            code, current, in_traceback = match["code"], [_PID_STAMP_RE.sub("", match["text"].strip())], False
        elif current is not None and line[:1].isspace() and line.strip():
            in_traceback = in_traceback or line.strip().startswith("TraceBack")
            if not in_traceback:
                current.append(line.strip())
        else:
            flush()
            current = None
    flush()
    errors = tuple(m for m in messages if m.code.startswith("E"))
    warnings = tuple(m for m in messages if m.code.startswith("W"))
    if errors:
        failure_lines = tuple(str(e) for e in errors)
    else:
        candidates = [line.strip() for line in lines if _FALLBACK_ERROR_RE.search(line) and FAILURE_BANNER not in line]
        failure_lines = tuple(candidates or [line.strip() for line in lines if line.strip()][-_FALLBACK_LINES:])
    return AtcLog(SUCCESS_BANNER in text, FAILURE_BANNER in text, errors, warnings, failure_lines)


@dataclass(frozen=True)
class AtcResult:
    """One finished ATC run."""

    command: tuple[str, ...]
    returncode: int
    log: AtcLog
    log_path: Path
    om_path: Path
    fusion_passes: tuple[FusionPass, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """Exit status 0, the success banner, and the .om on disk: all three, since each can lie alone."""
        return self.returncode == 0 and self.log.success_banner and self.om_path.is_file()

    @property
    def applied_fusions(self) -> set[str]:
        """Fusion passes that rewrote the graph, from ``fusion_result.json``."""
        return applied_passes(list(self.fusion_passes))

    def raise_for_failure(self) -> None:
        """Raise AtcError with ATC's error lines if the run failed."""
        if self.ok:
            return
        if self.returncode == 0 and self.log.success_banner:
            detail = [f"ATC reported success but {self.om_path} was not written"]
        else:
            detail = list(self.log.failure_lines) or ["(no output)"]
        raise AtcError(f"atc failed (exit status {self.returncode}):\n" + "\n".join(detail) + f"\nfull log: {self.log_path}")


def run_atc(
    command: Sequence[str], work_dir: Path, om_path: Path, timeout_s: float = DEFAULT_TIMEOUT_S, env: Mapping[str, str] | None = None
) -> AtcResult:
    """Run an ATC command in ``work_dir`` (where it writes ``fusion_result.json``), logging to ``atc.log``.

    The output goes straight to the log file rather than a pipe, so a grandchild (``atc`` is a
    wrapper around ``atc.bin``) cannot keep the run alive by holding the pipe open; ATC runs
    in its own process group, which is killed whole on timeout.

    Raises:
        AtcError: the executable is missing.
        AtcTimeout: the run took longer than ``timeout_s``.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / LOG_FILE
    fusion_report = work_dir / FUSION_RESULT_FILE
    # A report left by an earlier run must not be taken for this run's.
    fusion_report.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log_path, "wb") as log_file:
        try:
            process = subprocess.Popen(
                list(command), cwd=work_dir, stdout=log_file, stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise AtcError(f"{command[0]}: ATC executable not found ({exc}); {INSTALL_HINT}") from exc
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise AtcTimeout(
                f"atc did not finish within {timeout_s:g} s and was killed; partial log: {log_path}. "
                "Raise the timeout for large models, or look for a hung compile (a lock or license wait) in the log."
            ) from None
    seconds = time.perf_counter() - start
    text = log_path.read_text(encoding="utf-8", errors="replace")
    passes = tuple(parse_fusion_result(fusion_report.read_text(encoding="utf-8"))) if fusion_report.is_file() else ()
    return AtcResult(tuple(command), returncode, parse_atc_log(text), log_path, Path(om_path), passes, seconds)


def compile_om(
    onnx_path: Path,
    output: Path,
    input_hw: tuple[int, int],
    options: AtcOptions,
    input_name: str = "input",
    executable: str = "atc",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> AtcResult:
    """Build the command, run it next to ``output`` and return the result; raise AtcError on failure.

    Returns:
        AtcResult: with ``om_path == <output>.om``.
    """
    if shutil.which(executable) is None:
        raise AtcError(f"`{executable}` not found on PATH; {INSTALL_HINT}")
    output = Path(output).resolve()
    command = build_atc_command(onnx_path, output, input_hw, options, input_name, executable)
    result = run_atc(command, output.parent, output.with_name(output.name + ".om"), timeout_s, env)
    result.raise_for_failure()
    return result
