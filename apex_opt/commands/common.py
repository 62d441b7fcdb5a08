"""Options and loaders shared by several commands."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import click
import numpy as np

from ..errors import InputError
from ..registry import load_cluster
from ..specs.model import load_model

#: the source named by errors in a flag's value
CLI_SOURCE = "<command line>"


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (NaN passes every range comparison, so
    ``--client-ramp nan`` or ``--gpu-memory-utilization nan`` would reach the models)."""

    def convert(self, value, param, ctx):
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)


class NonEmptyPath(click.Path):
    """click.Path that refuses an empty string: ``--slo ""`` would silently mean no SLO (or the
    bundled default), ``--trace ""`` the current folder."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("empty path.", param, ctx)
        return super().convert(value, param, ctx)


def flag_for(field: str | None, flags: dict[str, str]) -> str | None:
    """The command-line flag a library field name stands for: ``flags[field]``, else
    ``--field-name`` (without a ``plan.groups[0].`` prefix) when the current command has that
    option, else ``field`` unchanged."""
    if field is None or field.startswith("--"):
        return field
    if field in flags:
        return flags[field]
    base = field
    for prefix in ("plan.groups[0].", "groups[0]."):
        base = base.removeprefix(prefix)
    flag = "--" + base.replace("_", "-")
    ctx = click.get_current_context(silent=True)
    known = {o for p in (ctx.command.params if ctx is not None else ()) for o in p.opts}
    return flag if flag in known else field


@contextmanager
def command_line_errors(flags: dict[str, str] | None = None, *, field: str | None = None,
                        sources: tuple[str | None, ...] = (None,)) -> Iterator[None]:
    """InputErrors raised inside without a source (or with one of ``sources``) are about values
    given on the command line (names, flags): re-raise them as one line naming ``<command line>``
    and the flag (a library field name is mapped through ``flags``, else to ``--field-name`` when
    the command has it; ``field`` names the flag of an error that names none)."""
    try:
        yield
    except InputError as exc:
        if exc.source not in sources:
            raise
        raise InputError(exc.reason, source=CLI_SOURCE,
                         field=flag_for(exc.field, flags or {}) or field,
                         value=exc.value) from None


def load_engine_flag(engine_name: str | None):
    """The --engine profile (an unknown name or version: InputError naming the flag)."""
    from ..specs.engine import load_engine

    with command_line_errors({"engine": "--engine"}):
        return load_engine(engine_name)


model_option = click.option(
    "--model", "model_ref", default="llama-3.1-70b", show_default=True,
    help="Bundled model name (see `apex-opt models`) or path to an HF config.json / its folder.")
cluster_option = click.option(
    "--cluster", "cluster_ref", default="h100-sxm-1x8", show_default=True,
    help="Bundled cluster name (see `apex-opt clusters`) or path to a cluster YAML.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
weight_dtype_option = click.option(
    "--weight-dtype", type=click.Choice(["bf16", "fp8", "int4", "fp4"]), default=None,
    help="Weight storage dtype [default: the checkpoint's own, from its config.json "
         "quantization_config: fp8 for fp8 checkpoints such as deepseek-v3, else bf16]. "
         "int4 (AWQ/GPTQ) and fp4 (NVFP4) need a pre-quantised checkpoint.")

sort_trace_option = click.option(
    "--sort-trace", is_flag=True, default=False,
    help="Sort the --trace by arrival time instead of rejecting one that goes back.")

kv_dtype_option = click.option("--kv-dtype", type=click.Choice(["bf16", "fp8"]), default=None,
                               help="KV-cache dtype [default: bf16; fp8 for a ModelOpt checkpoint "
                                    "that declares an FP8 KV cache, on engines that read it: vLLM "
                                    ">= 0.14, SGLang >= 0.5.3].")

redundant_experts_option = click.option(
    "--redundant-experts", type=click.IntRange(0, 4096), default=0, show_default=True,
    help="Redundant expert slots for EP load balancing (EPLB; SGLang --ep-num-redundant-experts, "
         "vLLM --enable-eplb): E + N expert slots split over --ep ranks, so an EP size that does "
         "not divide the experts can run, e.g. DeepSeek's 256 experts on 72 GPUs: --ep 72 "
         "--redundant-experts 32. Needs --ep > 1; each rank stores the extra experts.")

moe_a2a_option = click.option(
    "--moe-a2a", is_flag=True, default=False,
    help="With --attention-dp and --ep = --tp: dispatch each MoE layer's tokens to their experts' "
         "GPUs by all-to-all (DeepEP: SGLang --moe-a2a-backend deepep, vLLM --all2all-backend "
         "deepep_low_latency) instead of gathering every rank's tokens on every GPU. Shared "
         "experts are then whole on every GPU.")


def load_inputs(model_ref: str, cluster_ref: str):
    """The model and the cluster; one warning line per link bandwidth in a doubtful unit. An empty
    or unknown name is an InputError naming --model / --cluster; a device ``profile`` that is not
    bundled is one naming the cluster file and the field (it would silently fall back to the
    roofline, or fail later without naming the file)."""
    from ..bundled import profile_names
    from ..errors import warn
    from ..specs.cluster import unit_warnings

    if not cluster_ref.strip():
        raise InputError("empty cluster name or YAML path", source=CLI_SOURCE, field="--cluster",
                         value=cluster_ref)
    if not model_ref.strip():  # before reading the cluster: both are checked up front
        raise InputError("empty model name or config.json path", source=CLI_SOURCE,
                         field="--model", value=model_ref)
    with command_line_errors(field="--cluster"):  # an unknown bundled name (lists the valid ones)
        cluster = load_cluster(cluster_ref)
    known = profile_names()
    for i, p in enumerate(cluster.pools):
        prof = p.device.profile
        if prof is not None and prof not in known:
            raise InputError(f"unknown operator profile; bundled: {', '.join(known)} (or leave "
                             f"'profile' out to use the roofline)", source=cluster_ref,
                             field=f"pools[{i}].device.profile", value=prof)
    for w in unit_warnings(cluster):
        warn(f"{cluster_ref}: {w}")
    return load_model_ref(model_ref), cluster


def load_model_ref(ref: str, flag: str = "--model"):
    """The model of a bundled name or a config.json path given as ``flag``; an empty or unknown
    name is an InputError naming the flag (the message lists the bundled names)."""
    if not ref.strip():
        raise InputError("empty model name or config.json path", source=CLI_SOURCE, field=flag,
                         value=ref)
    with command_line_errors(field=flag):
        return load_model(ref)


def _engine_help() -> str:
    try:
        from ..specs.engine import all_engines

        names = ", ".join(f"{e.name} ({e.engine} {e.versions})" for e in all_engines())
    except Exception:  # pragma: no cover - help must render even with broken data
        names = "see `apex-opt engines`"
    return ("Serving-engine profile to model [default: vllm, the V1 engine]: " + names +
            ". NAME@VERSION pins a release (e.g. vllm@0.12: no async scheduling). "
            "List them with `apex-opt engines`.")


engine_option = click.option(
    "--engine", "engine_name", default=None, metavar="NAME[@VERSION]", help=_engine_help())


_sm_clock_option = click.option(
    "--sm-clock-mhz", type=click.IntRange(1, 10_000), default=None,
    help="Lock the GPUs' SM clock (MHz, as `nvidia-smi -lgc`), e.g. 1410 [default: driver default].")
_power_cap_option = click.option(
    "--power-cap-w", type=FiniteFloatRange(min=0, min_open=True), default=None,
    help="GPU board power limit (W, as `nvidia-smi -pl`), e.g. 500 [default: the device's TDP].")


def gpu_setting_options(f):
    """--sm-clock-mhz and --power-cap-w (checked against the device by check_gpu_setting_flags)."""
    return _sm_clock_option(_power_cap_option(f))


def check_gpu_setting_flags(cluster, pool: str | None, sm_clock_mhz: int | None,
                            power_cap_w: float | None) -> None:
    """--sm-clock-mhz / --power-cap-w inside the pool device's range (else InputError, exit 2).
    An unknown pool is left to the caller, which reports it with its own field."""
    if sm_clock_mhz is None and power_cap_w is None:
        return
    from ..costmodel.power import check_gpu_settings

    try:
        dev = cluster.pool(pool).device
    except KeyError:
        return
    check_gpu_settings(dev, sm_clock_mhz, power_cap_w, source="<command line>",
                       names=("--sm-clock-mhz", "--power-cap-w"))


_sampling_top_p_option = click.option(
    "--sampling-top-p", "sampling_top_p", type=FiniteFloatRange(0, 1, min_open=True), default=None,
    help="top_p every request sends, e.g. 0.95 [default: 1 = no filter, or the workload file's]. "
         "vLLM's sort-based top-p/top-k filter costs GPU time on every step.")
_sampling_top_k_option = click.option(
    "--sampling-top-k", "sampling_top_k", type=click.IntRange(0), default=None,
    help="top_k every request sends, e.g. 20 [default: 0 = no filter, or the workload file's].")


class MaxTokensParam(click.ParamType):
    """--max-tokens: an integer >= 1, or 'none' (the clients send no limit)."""

    name = "N|none"

    def convert(self, value, param, ctx):
        from ..sim.workload import MAX_TOKENS_NONE

        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            text = str(value).strip().lower()
            if text == MAX_TOKENS_NONE:
                return MAX_TOKENS_NONE
            try:
                n = int(text)
            except ValueError:
                self.fail(f"{value!r} is neither a token count nor 'none'", param, ctx)
        if n < 1:
            self.fail(f"{value!r}: max_tokens must be >= 1 (or 'none')", param, ctx)
        return n


_max_tokens_option = click.option(
    "--max-tokens", "max_tokens", type=MaxTokensParam(), default=None, metavar="N|none",
    help="max_tokens every request sends [default: its own output length, what benchmark "
         "clients forcing exact lengths send, or the workload file's]. With a larger N (chat "
         "clients: 4096) requests still end at their output length (EOS), but SGLang reserves KV "
         "room for up to min(N, 4096) more tokens per request and admits fewer at once; vLLM "
         "refuses prompt + N above max_model_len. 'none': no limit sent (the engine's own, up to "
         "the context length). Outputs longer than N are cut to N.")


def sampling_options(f):
    """--sampling-top-p / --sampling-top-k / --max-tokens: what every request asks for."""
    return _sampling_top_p_option(_sampling_top_k_option(_max_tokens_option(f)))


def apply_sampling(requests, top_p: float | None, top_k: int | None,
                   max_tokens: int | str | None = None):
    """The requests with the --sampling-top-p / --sampling-top-k / --max-tokens the user gave
    (None: as loaded)."""
    if max_tokens is not None:
        requests = requests.with_max_tokens(max_tokens)
    if top_p is None and top_k is None:
        return requests
    return requests.with_sampling(top_p, top_k)


def apply_client_ramp(requests, client_ramp: float | None):
    """The requests with the --client-ramp the user gave (None: as loaded); only a closed loop has
    clients to stagger (InputError, exit 2, otherwise)."""
    if client_ramp is None:
        return requests
    if requests.concurrency is None:
        from ..errors import InputError

        raise InputError(f"--client-ramp only applies to a closed loop (--concurrency, or a "
                         f"--workload with process closed_loop; got --client-ramp {client_ramp:g})")
    return requests.with_concurrency(requests.concurrency, ramp_s=client_ramp)


def check_max_model_len(model, max_model_len: int | None) -> None:
    """--max-model-len within the model's context (vLLM refuses a longer one: InputError, exit 2)."""
    if max_model_len is not None and max_model_len > model.max_position_embeddings:
        from ..errors import InputError

        raise InputError(f"exceeds the maximum context of {model.name} "
                         f"(max_position_embeddings {model.max_position_embeddings})",
                         source="<command line>", field="--max-model-len", value=max_model_len)


def check_request_lengths(requests, model, max_model_len: int | None, *, source: str,
                          field: str, exclusive: bool = False) -> None:
    """Requests whose prompt + output exceeds the context the engine accepts (--max-model-len, else
    the model's max_position_embeddings) are rejected by the engine. All of them: bad input (exit
    2, naming the limit); some: one warning line (they count as dropped). ``exclusive``: the
    engine needs the total *below* the limit (SGLang refuses a total equal to it)."""
    limit = max_model_len if max_model_len is not None else model.max_position_embeddings
    what = (f"max_model_len {limit:,}" if max_model_len is not None else
            f"the maximum context of {model.name}, {limit:,} tokens (max_position_embeddings)")
    # the engine checks the prompt + the max_tokens a request declares (none sent: one token)
    declared = requests.declared_max_tokens()
    total = requests.prompt_tokens + np.where(declared < 0, 1,
                                              np.maximum(declared, requests.output_tokens))
    parts = "prompt + output tokens"
    if isinstance(requests.max_tokens, int):
        parts, field = f"prompt + max_tokens ({requests.max_tokens:,})", "max_tokens"
    over = total >= limit if exclusive else total > limit
    rel = "at or above" if exclusive else "above"
    n, count = int(over.sum()), len(requests)
    if n == 0:
        return
    longest = requests.max_seq_len
    if n == count:
        from ..errors import InputError

        raise InputError(f"every request's {parts} "
                         f"{'reach or exceed' if exclusive else 'exceed'} {what}, so the "
                         f"engine would reject all of them; shorten the requests"
                         + ("" if max_model_len is None else " or raise max_model_len")
                         + (" or lower max_tokens" if field == "max_tokens" else ""),
                         source=source, field=field,
                         value=requests.max_tokens if field == "max_tokens" else longest)
    from ..errors import warn

    warn(f"{source}: {n:,} of {count:,} requests have {parts} {rel} {what} "
         f"(longest {longest:,}); the engine rejects them and they count as dropped")


def warn_thin_percentiles(slo, requests, slo_source: str) -> None:
    """One warning per tail SLO percentile (p99 and above) the workload has too few requests to
    measure: p needs at least 100 / (100 - p) requests before any request lies beyond it (p99:
    100, p99.9: 1,000), else the percentile is simply the slowest request. Lower percentiles of
    tiny smoke-test workloads stay quiet."""
    import math

    n = len(requests)
    for k, t in slo.targets().items():
        p = float(t.percentile)
        if p < 99 or p >= 100:
            continue
        need = math.ceil(100 / (100 - p) - 1e-9)
        if n < need:
            from ..errors import warn

            warn(f"{slo_source}: {k}.percentile {p:g} needs at least {need:,} requests to be "
                 f"measured; the workload has {n:,}, so p{p:g} is its slowest request")
