package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	etcdversion "go.etcd.io/etcd/api/v3/version"

	"github.com/axon-kv/axon/server"
)

// serveFunc runs a member with the resolved configuration until it is told
// to stop. cfg.Logger is set.
type serveFunc func(cfg server.Config) error

func newServeCmd(environ []string, run serveFunc) *cobra.Command {
	opts := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run an Axon member serving the etcd v3 API",
		Long: `Run an Axon member serving the etcd v3 API.

Every flag can also be set with an environment variable: AXON_ followed by the
flag name in upper case with dashes as underscores (--data-dir is
AXON_DATA_DIR). A flag given on the command line wins over the environment.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	opts.registerFlags(fs)
	var names []string
	fs.VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		// From here on errors are not about command-line syntax.
		cmd.SilenceUsage = true
		used, unknown, err := applyEnv(cmd.Flags(), names, environ)
		if err != nil {
			return err
		}
		cfg, err := opts.config()
		if err != nil {
			return err
		}
		logger, err := opts.newLogger(cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		cfg.Logger = logger
		for _, u := range used {
			logger.Info("using environment variable", "var", u.Var, "flag", "--"+u.Flag)
		}
		for _, k := range unknown {
			logger.Warn("unrecognized environment variable ignored", "var", k)
		}
		if err := applyMemoryLimit(opts.memoryLimit, logger); err != nil {
			return err
		}
		applyGCPercent(opts.gcPercent, cmd.Flags().Changed("gc-percent"), logger)
		cfg.MaxReadBytesInFlight = readBudgetBytes(opts.readBudget, debug.SetMemoryLimit(-1))
		return run(cfg)
	}
	return cmd
}

// runServe is the real `axon serve`: it starts the server and, on SIGTERM or
// SIGINT, closes it gracefully; a second signal exits at once.
func runServe(cfg server.Config) error {
	log := cfg.Logger
	slog.SetDefault(log)

	// Catch signals from the start, so that one arriving while the backend
	// opens still shuts down cleanly.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	log.Info("starting axon",
		"version", axonVersion(),
		"etcd-version", etcdversion.Version,
		"backend", cfg.Backend,
		"data-dir", cfg.DataDir,
		"listen-client-urls", cfg.ListenClientURLs,
		"max-request-bytes", cfg.MaxRequestBytes,
		"max-txn-ops", cfg.MaxTxnOps,
		"watch-progress-notify-interval", cfg.WatchProgressNotifyInterval,
		"auto-compaction-retention", cfg.AutoCompactionRetention,
	)
	if cfg.Backend == "badger" {
		if err := ensureDataDir(cfg.DataDir, log); err != nil {
			return err
		}
	}

	type started struct {
		srv *server.Server
		err error
	}
	startc := make(chan started, 1)
	go func() {
		srv, err := server.New(cfg)
		if err != nil {
			startc <- started{err: fmt.Errorf("open server: %w", err)}
			return
		}
		if err := srv.Start(); err != nil {
			startc <- started{err: errors.Join(fmt.Errorf("start server: %w", err), srv.Close())}
			return
		}
		startc <- started{srv: srv}
	}()

	var srv *server.Server
	var sig os.Signal
	select {
	case st := <-startc:
		if st.err != nil {
			return st.err
		}
		srv = st.srv
		log.Info("ready to serve client requests", "urls", srv.ClientURLs())
		sig = <-sigs
	case sig = <-sigs:
		log.Info("signal received during startup; will shut down once started", "signal", sig.String())
		select {
		case st := <-startc:
			if st.err != nil {
				return st.err
			}
			srv = st.srv
		case sig2 := <-sigs:
			log.Warn("second signal received, exiting immediately", "signal", sig2.String())
			os.Exit(1)
		}
	}

	log.Info("shutting down gracefully; send the signal again to exit immediately", "signal", sig.String())
	done := make(chan error, 1)
	go func() { done <- srv.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		log.Info("shutdown complete")
		return nil
	case sig2 := <-sigs:
		log.Warn("second signal received, exiting immediately", "signal", sig2.String())
		os.Exit(1)
	}
	return nil // unreachable
}

// ensureDataDir creates dir with mode 0700 if missing and warns when an
// existing one is open to others, as etcd does.
func ensureDataDir(dir string, log *slog.Logger) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create data dir: %w", err)
		}
		log.Info("created data dir", "data-dir", dir)
		return nil
	case err != nil:
		return fmt.Errorf("data dir: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("data dir %q exists and is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		log.Warn("data dir is accessible by other users; 0700 is recommended",
			"data-dir", dir, "mode", fmt.Sprintf("%#o", perm))
	}
	return nil
}
