//go:build race

package manifest

// raceEnabled says the race detector is on: it makes decoding about ten
// times slower.
const raceEnabled = true
