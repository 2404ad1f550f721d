package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// SignalContext is for the programs built on the test bed (the demo, the
// benchmarks): the context ends on the first SIGINT or SIGTERM, which says
// that cleanup follows; a second signal kills the program at once.
func SignalContext(name string) context.Context {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done() // only a signal ends ctx
		fmt.Fprintf(os.Stderr, "\n%s: interrupted: cleaning up (press Ctrl-C again to abandon the cleanup)\n", name)
		stop() // a second signal kills at once
	}()
	return ctx
}

// RunSteps runs steps in order until one fails or ctx ends. A step that
// fails because ctx ended (an interruption) returns ctx's error, so Exit
// reports an interruption, not the step's error.
func RunSteps(ctx context.Context, steps ...func(context.Context) error) error {
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := step(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
	return nil
}

// Exit ends such a program after its run (err) and its cleanup
// (cleanupErr): 130 if it was interrupted, 1 if either failed, else 0.
func Exit(name string, err, cleanupErr error) {
	if cleanupErr != nil {
		fmt.Fprintf(os.Stderr, "\n%s: cleanup failed: %v\n", name, cleanupErr)
	}
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(os.Stderr, "\n%s: interrupted\n", name)
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "\n%s failed: %v\n", name, err)
		os.Exit(1)
	case cleanupErr != nil:
		os.Exit(1)
	}
	os.Exit(0)
}
