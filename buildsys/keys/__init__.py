"""Keys and planning: actions and their keys, the workspace's state, and the planner that looks keys up."""
