module c1m-rs/baselines/go-echo

go 1.19
