"""The prompts agents send: templates and their sandbox, variables, history fitting and dry-run replay.

The paper's prompt (the LossAgent's three parts: system, history, needs) and the guided agent's
(system, user) are Jinja2 templates rendered in a sandbox from plain variables; each part can be
replaced by a file or a string. One module a job:

* ``templates`` — loading, the sandbox, rendering (``TemplateSet``);
* ``paper`` — the paper's templates (``PromptTemplates``) and a decision context as their variables;
* ``fitting`` — the messages of one decision, the history shortened to the model's context;
* ``guided`` — the guided agent's templates and variables;
* ``replay`` — a recorded run's latest decision rebuilt, for ``agentloss prompt``;
* ``sample`` — the small context every template is checked on at construction.

Example:
    >>> from agentloss.constraints import WeightConstraints
    >>> from agentloss.types import DecisionContext, ObjectiveInfo, StageRecord
    >>> ctx = DecisionContext(
    ...     loss_names=["l1", "gan"], current_weights={"l1": 1.0, "gan": 0.01},
    ...     initial_weights={"l1": 1.0, "gan": 0.01},
    ...     history=[StageRecord(0, 0, {"l1": 1.0, "gan": 0.01}, {"psnr": 25.0}),
    ...              StageRecord(1, 100, {"l1": 1.0, "gan": 0.01}, {"psnr": 25.5})],
    ...     objectives=[ObjectiveInfo("psnr", True, "fidelity to the reference, in dB")],
    ...     constraints=WeightConstraints(max_step=2.0), stage=1)
    >>> msgs = build_messages(ctx, needs_text="Raise PSNR.")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
    >>> "psnr=25.5000 (↑ +0.5000, better)" in msgs[1]["content"]
    True
"""

from .fitting import Message, build_messages, estimate_tokens, fit_history, reserve_tokens
from .guided import GuidedTemplates, guided_messages, guided_variables
from .paper import FEEDBACK_BEGIN, FEEDBACK_END, PromptTemplates, prompt_variables, sanitize_feedback
from .replay import context_from_run, dry_run_messages
from .sample import sample_context
from .templates import PromptTemplateError, TemplateSet

__all__ = [
    "FEEDBACK_BEGIN", "FEEDBACK_END", "GuidedTemplates", "Message", "PromptTemplateError", "PromptTemplates",
    "TemplateSet", "build_messages", "context_from_run", "dry_run_messages", "estimate_tokens", "fit_history",
    "guided_messages", "guided_variables", "prompt_variables", "reserve_tokens", "sample_context",
    "sanitize_feedback",
]
