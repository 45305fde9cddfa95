// The service the end-to-end tests call through the proxy.
// Python code generated with: thrift --gen py -out gen_py greeter.thrift
// (Debian thrift-compiler 0.17.0); see setup.sh.
namespace py greeter

exception GreetError {
  1: i32 code
  2: string message
}

service Greeter {
  // "error" -> GreetError(42, "bad name"); "crash" -> TApplicationException INTERNAL_ERROR;
  // anything else -> "Hello, <name>".
  string sayHello(1: string name) throws (1: GreetError err)
  // Recorded by the server; pingCount() tells how many arrived.
  oneway void ping()
  i32 pingCount()
  // The value of the THeader info header `key` the server received, or "" if absent.
  string echoHeader(1: string key)
}
