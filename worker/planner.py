"""The planner lives in :mod:`cachebus.planning`: one pure function for the worker and
for the library's ``document_created/updated/deleted`` calls. Re-exported here."""

from cachebus.planning import Action, ActionKind, Plan, plan

__all__ = ["Action", "ActionKind", "Plan", "plan"]
