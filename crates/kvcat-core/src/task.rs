//! (being written: the Task trait and registry)
