"""What runs spend, kept in check: budgets and their limits in force, shared rate limits,
and the one paid model request every step and DurableAgent makes (`_paid`)."""
