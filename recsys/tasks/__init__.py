"""Lightning tasks: loss, metrics and optimisation around plain zoo models. Each task declares the
validation metric that selects its epochs (`monitor`, `mode`) and the data module it trains on."""
