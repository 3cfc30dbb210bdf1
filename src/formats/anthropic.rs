//! anthropic format (see the parent module for the function set).
