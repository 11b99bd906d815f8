"""Pure decisions (snapshot in, decision out): request routing now; placement, balancing later."""
