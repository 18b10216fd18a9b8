public class Hello {
    public static void main(String[] args) {
        var total = new java.math.BigDecimal("1.10").add(new java.math.BigDecimal("2.20"));
        System.out.println("{\"total\": \"" + total + "\"}");
    }
}
