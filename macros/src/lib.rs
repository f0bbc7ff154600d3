//! Derive macros for weir handlers (the `Handler` derive is under construction).
