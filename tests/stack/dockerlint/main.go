// Command dockerlint runs BuildKit's own Dockerfile parser and build checks (the
// rules of `docker build --check`) on one Dockerfile, without a Docker engine.
//
// Usage: dockerlint DOCKERFILE [NAME=VALUE ...]   (build arguments)
// Prints one JSON object: {"warnings": [{"rule", "message", "line"}], "error": "..."}.
// Base images are not pulled: a stand-in image config with no settings is used.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerui"
	digest "github.com/opencontainers/go-digest"
)

type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	config := []byte(`{"architecture":"amd64","os":"linux","config":{}}`)
	return ref, digest.FromBytes(config), config, nil
}

type warning struct {
	Rule    string `json:"rule"`
	Message string `json:"message"`
	Line    int32  `json:"line"`
}

type result struct {
	Warnings []warning `json:"warnings"`
	Error    string    `json:"error,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerlint DOCKERFILE [NAME=VALUE ...]")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	args := map[string]string{}
	for _, pair := range os.Args[2:] {
		name, value, _ := strings.Cut(pair, "=")
		args[name] = value
	}
	ctx := context.Background()
	scratch := llb.Scratch()
	definition, err := scratch.Marshal(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	source := llb.NewSourceMap(&scratch, os.Args[1], "Dockerfile", data)
	source.Definition = definition
	lint, err := dockerfile2llb.DockerfileLint(ctx, data, dockerfile2llb.ConvertOpt{
		Config:       dockerui.Config{BuildArgs: args},
		SourceMap:    source,
		MetaResolver: offlineResolver{},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := result{Warnings: []warning{}}
	for _, w := range lint.Warnings {
		line := int32(0)
		if len(w.Location.Ranges) > 0 {
			line = w.Location.Ranges[0].Start.Line
		}
		out.Warnings = append(out.Warnings, warning{Rule: w.RuleName, Message: w.Detail, Line: line})
	}
	if lint.Error != nil {
		out.Error = lint.Error.Message
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(2)
	}
}
