"""Framework adapters, each importing its framework only when used:

- ``agent_assembly.adapters.langchain``: LangChain tools and chat models (extra ``langchain``).
- ``agent_assembly.adapters.openai_agents``: OpenAI Agents SDK function tools and models
  (extra ``openai-agents``).
- ``agent_assembly.adapters.mcp``: MCP client sessions (extra ``mcp``).
"""
