package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of /proc/PID/stat's utime and stime: USER_HZ, which
// Linux fixes at 100 for user space on every architecture.
const clockTick = 10 * time.Millisecond

// cpuSample is a process's CPU time at one moment.
type cpuSample struct {
	user, sys time.Duration
	at        time.Time
	gcs       int  // GC cycles so far (gctrace lines)
	counted   bool // gcs was counted (--gctrace)
	err       error
}

// readCPU reads pid's user and system CPU time, all threads together.
func readCPU(pid int) (cpuSample, error) {
	s := cpuSample{at: time.Now()}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The command name, field 2, is in parentheses and may hold spaces; the
	// fields after it start at field 3 (state).
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return s, fmt.Errorf("/proc/%d/stat: no ')' in %q", pid, data)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields after the name, want 13 or more", pid, len(f))
	}
	// utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	s.user, s.sys = time.Duration(utime)*clockTick, time.Duration(stime)*clockTick
	return s, nil
}

// cpuUse is the CPU a process used between two samples.
type cpuUse struct {
	user, sys, wall time.Duration
	gcs             int
	counted         bool // gcs was counted
	err             error
}

func (s cpuSample) since(before cpuSample) cpuUse {
	u := cpuUse{user: s.user - before.user, sys: s.sys - before.sys, wall: s.at.Sub(before.at),
		gcs: s.gcs - before.gcs, counted: s.counted && before.counted}
	if u.err = s.err; u.err == nil {
		u.err = before.err
	}
	return u
}

// plus is u and o together.
func (u cpuUse) plus(o cpuUse) cpuUse {
	s := cpuUse{user: u.user + o.user, sys: u.sys + o.sys, wall: u.wall + o.wall, gcs: u.gcs + o.gcs, counted: u.counted && o.counted, err: u.err}
	if s.err == nil {
		s.err = o.err
	}
	return s
}

// per is the CPU time per unit of work, scaled (1e6: µs), then the cores
// busy on average and the share spent in the kernel, e.g.
// "0.71 s/GB, 1.05 cores, sys 48%".
func (u cpuUse) per(amount float64, unit string, scale float64) string {
	if u.err != nil {
		return "?"
	}
	total := u.user + u.sys
	if total <= 0 || amount <= 0 || u.wall <= 0 {
		return "0"
	}
	return fmt.Sprintf("%s %s, %.2f cores, sys %.0f%%", number(total.Seconds()*scale/amount), unit,
		total.Seconds()/u.wall.Seconds(), 100*u.sys.Seconds()/total.Seconds())
}

// gcNote is ", N GCs" when GC cycles were counted (--gctrace).
func (u cpuUse) gcNote() string {
	if !u.counted {
		return ""
	}
	return fmt.Sprintf(", kubetun GCs %d", u.gcs)
}

// busyNow is the share of the machine's CPU time spent busy (not idle or
// waiting for I/O) over one second, from /proc/stat: what other work the
// shared machine is doing as the bench starts.
func busyNow() string {
	before, err := cpuTotals()
	if err != nil {
		return "?"
	}
	time.Sleep(time.Second)
	after, err := cpuTotals()
	if err != nil || after.total <= before.total {
		return "?"
	}
	idle := after.idle - before.idle
	total := after.total - before.total
	return fmt.Sprintf("%.0f%%", 100*float64(total-idle)/float64(total))
}

// cpuTotals reads the first line of /proc/stat: all CPUs' time, and the
// idle and iowait part of it, in clock ticks.
func cpuTotals() (t struct{ total, idle int64 }, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return t, fmt.Errorf("/proc/stat: first line %q", line)
	}
	// user nice system idle iowait irq softirq steal; guest time, after
	// them, is counted in user already.
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return t, fmt.Errorf("/proc/stat: %q: %v", s, err)
		}
		t.total += v
		if i == 3 || i == 4 { // idle, iowait
			t.idle += v
		}
	}
	return t, nil
}
