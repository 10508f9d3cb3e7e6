package tikv

// SetTestHookBeforeWrite makes Commit call fn after it read and checked the
// batch's conditions and before it writes anything.
func (d *DB) SetTestHookBeforeWrite(fn func()) { d.testHookBeforeWrite = fn }
