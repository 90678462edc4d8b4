"""Example agents: `data_analyst` (the main demo), `approval` (a person in the loop),
`researcher` (a ReAct loop) and `durable_analyst` (a plain pydantic-ai agent made durable).

`offline_model(name, reply)` is the stand-in model they use when no API key is set: a
pydantic-ai `FunctionModel` answering each prompt with `reply(prompt)`, with no network.
"""

from ._offline import offline_model

__all__ = ["offline_model"]
