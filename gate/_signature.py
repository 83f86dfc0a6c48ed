"""The wrapper's own signature: the function's parameters, then ``escrow_id``, then a gr.Request.

Gradio decides what to inject by reading ``inspect.signature`` and
``typing.get_type_hints`` of the function it is given (``special_args``), so
the wrapper presents a real signature with resolved annotations and no
``__wrapped__`` (``functools.wraps`` would make Gradio read the original).
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import gradio as gr

__all__ = ["GatedSignature", "build_signature", "present", "resolved_hints"]

log = logging.getLogger("gate")

ESCROW_PARAM = "escrow_id"
_REQUEST_TYPES = (gr.Request, Optional[gr.Request])
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class GatedSignature:
    """How a call to the wrapper maps onto a call to the wrapped function."""

    signature: inspect.Signature  # its annotations resolved (``present`` derives __annotations__ from them)
    positional: tuple[str, ...]
    keyword_only: tuple[str, ...]
    var_keyword: str | None
    request_param: str  # the wrapper parameter Gradio fills with gr.Request

    def split(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, Any, Any]:
        """(function args, function kwargs, escrow_id argument, gr.Request or None)."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        fn_args = tuple(values[name] for name in self.positional)
        fn_kwargs = {name: values[name] for name in self.keyword_only}
        if self.var_keyword is not None:
            fn_kwargs.update(values[self.var_keyword])
        return fn_args, fn_kwargs, values[ESCROW_PARAM], values[self.request_param]


def present(wrapper: Callable, fn: Callable, signature: inspect.Signature, doc: str | None) -> Callable:
    """Give ``wrapper`` ``fn``'s names, ``doc``, and ``signature`` with its resolved annotations, for the framework
    that reads them. Not functools.wraps: it sets __wrapped__ and copies the original annotations, after which
    Gradio reads the original signature and stops injecting gr.Request."""
    for attribute in ("__module__", "__name__", "__qualname__"):
        if hasattr(fn, attribute):
            setattr(wrapper, attribute, getattr(fn, attribute))
    wrapper.__doc__ = doc
    wrapper.__signature__ = signature
    annotations = {p.name: p.annotation for p in signature.parameters.values() if p.annotation is not p.empty}
    if signature.return_annotation is not inspect.Signature.empty:
        annotations["return"] = signature.return_annotation
    wrapper.__annotations__ = annotations
    return wrapper


def resolved_hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable string annotations: keep the ones that are objects
        log.warning("could not resolve the annotations of %r (%s); string annotations are dropped", fn, exc)
        raw = getattr(fn, "__annotations__", {}) or {}
        return {name: hint for name, hint in raw.items() if not isinstance(hint, str)}


def build_signature(fn: Callable, *, keep_return: bool) -> GatedSignature:
    """Check ``fn`` can be gated (TypeError if not) and build the wrapper's signature."""
    try:
        original = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot gate {fn!r}: its signature cannot be read") from exc
    hints = resolved_hints(fn)
    params = list(original.parameters.values())
    names = {p.name for p in params}
    if ESCROW_PARAM in names:
        raise TypeError(
            f"{getattr(fn, '__name__', fn)!r} already has a parameter named {ESCROW_PARAM!r}; "
            "the gate adds it: remove it from the function"
        )
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        raise TypeError(
            f"cannot gate {getattr(fn, '__name__', fn)!r}: *args leaves no place for the "
            f"{ESCROW_PARAM!r} argument after the function's own"
        )

    def resolved(p: inspect.Parameter) -> inspect.Parameter:
        return p.replace(annotation=hints.get(p.name, inspect.Parameter.empty))

    positional = [resolved(p) for p in params if p.kind in _POSITIONAL]
    keyword_only = [resolved(p) for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    var_keyword = next((resolved(p) for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)

    own_request = next((p.name for p in positional if hints.get(p.name) in _REQUEST_TYPES), None)
    added: list[inspect.Parameter] = [
        # Default None, not "": Gradio marks a parameter optional for gradio_client only when
        # its default is None, and an agent sending the ID in X-Escrow-Id passes no argument.
        inspect.Parameter(
            ESCROW_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Optional[str]
        )
    ]
    if own_request is None:
        request_param = next(n for n in ("request", "gate_request", "_gate_request") if n not in names)
        added.append(
            inspect.Parameter(
                request_param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request
            )
        )
    else:
        request_param = own_request

    wrapper_params = positional + added + keyword_only + ([var_keyword] if var_keyword else [])
    return_hint = hints.get("return", inspect.Signature.empty) if keep_return else inspect.Signature.empty
    signature = inspect.Signature(wrapper_params, return_annotation=return_hint)
    return GatedSignature(
        signature=signature,
        positional=tuple(p.name for p in positional),
        keyword_only=tuple(p.name for p in keyword_only),
        var_keyword=var_keyword.name if var_keyword else None,
        request_param=request_param,
    )
