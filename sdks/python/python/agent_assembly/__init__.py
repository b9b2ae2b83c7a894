"""Agent Assembly for Python: one call at start-up, and from then on a denied tool does not run.

    from agent_assembly import init_assembly

    with init_assembly("support-bot", team_id="support") as assembly:

        @assembly.tool
        def refund(order_id: str, amount: float) -> str: ...

The SDK is a thin layer over the native client (``aa-sdk-client``); the runtime it talks to
decides, redacts and records. See ``init_assembly`` and ``Assembly``.
"""

from .assembly import Assembly, init_assembly
from .decision import Decision
from .errors import (
    AssemblyError,
    LlmCallDenied,
    NativeExtensionMissing,
    PolicyDenied,
    RegistrationError,
    ReportError,
    ToolDenied,
)

__all__ = [
    "Assembly",
    "AssemblyError",
    "Decision",
    "LlmCallDenied",
    "NativeExtensionMissing",
    "PolicyDenied",
    "RegistrationError",
    "ReportError",
    "ToolDenied",
    "init_assembly",
]
