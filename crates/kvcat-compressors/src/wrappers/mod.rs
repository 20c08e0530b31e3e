//! Wrappers that change how an inner method's budget is spent (added below).
